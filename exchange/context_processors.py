from exchange.services.notifications import notifications_unread_count


def notifications_unread(request):
    """``notifications_unread``: the signed-in user's unread count for the nav.

    Lazy (no query unless a template shows it) and counted at most once per
    request, however many templates render it.
    """

    def count() -> int:
        if not hasattr(request, "_notifications_unread"):
            user = getattr(request, "user", None)
            request._notifications_unread = notifications_unread_count(user=user) if user is not None else 0
        return request._notifications_unread

    return {"notifications_unread": count}
