from merchants.selectors import merchant_for_user


def current_merchant(request):
    """Expose the signed-in user's merchant organisation to templates (lazily)."""
    cache = {}

    def _get():
        if "m" not in cache:
            cache["m"] = merchant_for_user(user=request.user)
        return cache["m"]

    return {"current_merchant": _get}
