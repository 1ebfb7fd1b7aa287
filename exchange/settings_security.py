"""Production hardening settings (issue 9), imported at the end of exchange/settings.py.

``from exchange.settings_security import *`` only sees this module's public names, and this module cannot see
exchange/settings.py's, so it reads the few values it needs (DJANGO_ENV, SITE_URL) from the environment again.
Private helpers start with an underscore so the star import leaves them out.

Development and tests keep Django's defaults for cookies, HSTS and redirects (plain http on 127.0.0.1 must
work); the Content-Security-Policy header (exchange/middleware.py) is sent everywhere, report-only outside
production, so a page that breaks the policy shows up in the browser's console during development.
"""

from urllib.parse import urlsplit as _urlsplit

from django.core.exceptions import ImproperlyConfigured as _ImproperlyConfigured

from exchange.env import env_bool as _env_bool
from exchange.env import env_choice as _env_choice
from exchange.env import env_int as _env_int
from exchange.env import env_str as _env_str

_DEPLOY_ENV = _env_choice("DJANGO_ENV", "development", {"development", "test", "production"})
_PRODUCTION = _DEPLOY_ENV == "production"

# Strict: scripts and stylesheets only from the site itself, no inline <script>/<style> or style="" attributes, no
# eval. The pages load htmx (django-htmx's static copy, configured by base.html's htmx-config meta tag not to inject
# its indicator styles nor evaluate code), static/js/*.js, Pico CSS (static/vendor/pico) and static/css/*.css.
# Setting element.style from a script (CSSOM) stays allowed. The icons Pico draws are data: SVGs (img-src data:).
# Swagger UI and redoc (drf-spectacular's sidecar) load from /static/ and redoc runs a blob: worker.
DEFAULT_CSP = (
    "default-src 'self'; "
    "script-src 'self'; "
    "style-src 'self'; "
    "img-src 'self' data:; "
    "font-src 'self' data:; "
    "connect-src 'self'; "
    "worker-src 'self' blob:; "
    "object-src 'none'; "
    "base-uri 'self'; "
    "form-action 'self'; "
    "frame-ancestors 'none'"
)
# Swagger UI and Redoc (the API docs, drf-spectacular's sidecar) inject inline styles (Redoc fails to render
# without them): only their two pages add 'unsafe-inline' to style-src (exchange.middleware.inline_styles_allowed).
# The policy, whole (CSP overrides it); an empty CSP switches the header off.
CSP_POLICY = _env_str("CSP", DEFAULT_CSP).strip()
# Report-only outside production unless told otherwise: the browser reports violations but blocks nothing.
CSP_REPORT_ONLY = _env_bool("CSP_REPORT_ONLY", not _PRODUCTION)

# Django's defaults, pinned here in every environment so a library cannot loosen them unnoticed.
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = _env_str("SECURE_REFERRER_POLICY", "same-origin")
SESSION_COOKIE_HTTPONLY = True
# axes.W006 asks for per-address lockouts as well; exchange/settings.py locks per username on purpose (see its
# "lockouts and rate limits" comment: allauth limits per address), so the check is answered, not ignored.
SILENCED_SYSTEM_CHECKS = ["axes.W006"]
# The health check answers load balancers over plain http on the app's own port; it never redirects.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]

if _PRODUCTION:
    if _env_bool("DJANGO_DEBUG", False):
        raise _ImproperlyConfigured("DJANGO_DEBUG must be off when DJANGO_ENV=production")
    _site_url = _env_str("SITE_URL", "").rstrip("/")
    _site = _urlsplit(_site_url)
    if _site.scheme != "https" or not _site.hostname:
        raise _ImproperlyConfigured(f"SITE_URL must be an https:// address in production, got {_site_url!r}")
    # TLS ends at nginx, which tells the app the original scheme; only a proxy that sets (or strips) this
    # header may stand in front of the app, or a client could claim https itself.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = _env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = _env_int("SECURE_HSTS_SECONDS", 31_536_000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = _env_bool("SECURE_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    CSRF_TRUSTED_ORIGINS = [f"{_site.scheme}://{_site.netloc}"]
