from django.urls import path

from exchange import certificate_views as views

app_name = "certificates"

urlpatterns = [
    path("verify/", views.verify, name="verify"),
    path("verify/public-key.pem", views.public_key_pem, name="public_key"),
    path("verify/<str:number>/", views.verify_number, name="verify_number"),
    path("certificates/order/<uuid:public_id>/", views.certificate_for_order, name="for_order"),
    path("certificates/<str:number>/", views.certificate_page, name="detail"),
    path("certificates/<str:number>/bundle.json", views.certificate_bundle_download, name="bundle"),
    path("api/v1/certificates/public-key/", views.PublicKeyApi.as_view(), name="api_public_key"),
    path("api/v1/certificates/verify/", views.CertificateVerifyApi.as_view(), name="api_verify"),
    path("api/v1/certificates/<str:number>/", views.CertificateDetailApi.as_view(), name="api_detail"),
]
