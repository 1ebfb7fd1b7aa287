from django.urls import path

from merchants import views

app_name = "merchants"
urlpatterns = [
    path("onboard/", views.merchant_onboard, name="onboard"),
]
