"""The health-check endpoint (issue 9)."""

urlpatterns = []
