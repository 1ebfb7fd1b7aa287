"""Usage pages: the buyer's (``/library/usage/``) and the merchant's aggregate (``/console/usage/``)."""

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render

from exchange.data_api.selectors import buyer_usage, merchant_usage
from merchants.selectors import merchant_for_user


@login_required
def buyer_usage_page(request):
    return render(request, "exchange/usage.html", {"usage": buyer_usage(user=request.user)})


@login_required
def merchant_usage_page(request):
    merchant = merchant_for_user(user=request.user)
    if merchant is None:
        raise Http404("You are not a merchant.")
    return render(request, "exchange/usage_merchant.html", {"merchant": merchant, **merchant_usage(merchant=merchant)})
