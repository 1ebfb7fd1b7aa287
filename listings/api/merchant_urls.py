"""The merchant's side of the REST API: products, versions, review, pricing, sales, payouts, statements, usage.

Products live here (listings); the money side (sales, payouts, statements, usage) is exchange.api.merchant_urls,
mounted under the same ``/api/v1/merchant/``.
"""

from django.urls import path

from listings.api import merchant_views as views

app_name = "merchant_api"

urlpatterns = [
    path("products/", views.ProductListCreateView.as_view(), name="product-list"),
    path("products/<slug:slug>/", views.ProductDetailView.as_view(), name="product-detail"),
    path("products/<slug:slug>/versions/", views.VersionListCreateView.as_view(), name="version-list"),
    path("products/<slug:slug>/versions/<int:pk>/", views.VersionDetailView.as_view(), name="version-detail"),
    path("products/<slug:slug>/submit/", views.ProductSubmitView.as_view(), name="product-submit"),
    path("products/<slug:slug>/reviews/", views.ReviewListView.as_view(), name="review-list"),
    path("products/<slug:slug>/plans/", views.PlanListCreateView.as_view(), name="plan-list"),
    path("products/<slug:slug>/plans/<int:pk>/", views.PlanDetailView.as_view(), name="plan-detail"),
]
