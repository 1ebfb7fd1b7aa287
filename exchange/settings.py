"""Settings for the data exchange.

Everything configurable comes from the environment (see README "Environment").
With nothing set, the embedded default runs: SQLite, kombu's filesystem broker
under var/, local private file storage, the sandbox payment gateway and console
email. DATABASE_URL and REDIS_URL switch to PostgreSQL and Redis.
"""

import secrets
from pathlib import Path

import dj_database_url
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from exchange.env import env_bool, env_choice, env_int, env_list, env_money_map, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("EXCHANGE_VAR_DIR", str(BASE_DIR / "var"))).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEPLOY_ENV = env_choice("DJANGO_ENV", "development", {"development", "test", "production"})
DEBUG = env_bool("DJANGO_DEBUG", DEPLOY_ENV == "development")


def _secret_key() -> str:
    key = env_str("DJANGO_SECRET_KEY")
    if key:
        if DEPLOY_ENV == "production" and len(key) < 50:
            raise ImproperlyConfigured("DJANGO_SECRET_KEY must be at least 50 characters in production")
        return key
    if DEPLOY_ENV == "production":
        raise ImproperlyConfigured("DJANGO_SECRET_KEY is required when DJANGO_ENV=production")
    # Development and tests: a random key generated once and kept in var/, so
    # sessions and signed links survive restarts without anything configured.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(64))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.sites",
    "django.contrib.postgres",
    "django_filters",
    "allauth",
    "allauth.account",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "django_htmx",
    "template_partials",
    "accounts",
    "merchants",
    "listings",
    "exchange",
    "axes",
    "audit",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "exchange.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "exchange.timezones.TimezoneMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "audit.middleware.RequestContextMiddleware",
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "exchange.urls"
WSGI_APPLICATION = "exchange.wsgi.application"
ASGI_APPLICATION = "exchange.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "merchants.context_processors.current_merchant",
                "exchange.context_processors.notifications_unread",
            ],
        },
    },
]

# --- database -------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    try:
        DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))}
    except Exception as exc:  # dj-database-url raises several types for bad URLs
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "db.sqlite3",
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- cache and broker -----------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "common.cache.ExchangeRedisCache", "LOCATION": REDIS_URL}}
else:
    # Shared by the web server and the workers (a per-process cache would hide one's flags from the other).
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL or "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("queue", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
else:
    # A task not acknowledged within this time is redelivered; it must exceed
    # the longest task (DESIGN.md §5.7: tasks are safe to run twice).
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=60)}
# Reliability from day one: acknowledge after the work is done, requeue the
# task when its worker dies, and never let one worker hoard queued tasks.
CELERY_TASK_ACKS_LATE = True
# Celery's Django fixup closes the database connections before and after every task unless told to
# reuse them: each task would open a new PostgreSQL connection (most of a short task's time). Reuse
# them for this many tasks; Django's own CONN_MAX_AGE and health checks still retire old or broken ones.
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000, minimum=0)
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "exchange.tasks.delivery_*": {"queue": "delivery"},
    "exchange.tasks.settlement_*": {"queue": "settlement"},
    "exchange.tasks.payout_*": {"queue": "settlement"},
    # Emails and webhook sends wait on other servers: their own queue keeps them from the payment drains.
    "exchange.tasks.notification_*": {"queue": "notifications"},
    "exchange.tasks.notifications_*": {"queue": "notifications"},
    "exchange.tasks.outbound_*": {"queue": "notifications"},
}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
SETTLEMENT_HOUR_UTC = env_int("SETTLEMENT_HOUR_UTC", 2, minimum=0, maximum=23)
# Orders per settlement batch: one task, one transaction, one ledger block; batches run in parallel.
SETTLEMENT_BATCH_SIZE = env_int("SETTLEMENT_BATCH_SIZE", 500, minimum=1, maximum=10000)
# A running run with no batch finished for this long gets its lost work queued again (beat, every 5 minutes).
SETTLEMENT_STALLED_SECONDS = env_int("SETTLEMENT_STALLED_SECONDS", 600, minimum=30)
CELERY_BEAT_SCHEDULE = {
    "settlement-daily": {
        "task": "exchange.tasks.settlement_run_scheduled",
        "schedule": crontab(minute=0, hour=SETTLEMENT_HOUR_UTC),
    },
    "payment-events-sweep": {
        "task": "exchange.tasks.payment_events_sweep",
        "schedule": 60.0,
    },
    "settlement-resume": {"task": "exchange.tasks.settlement_runs_resume", "schedule": 300.0},
    "datafile-profile-sweep": {"task": "listings.tasks.datafile_profile_sweep", "schedule": 600.0},
    "entitlements-expire": {"task": "exchange.tasks.entitlements_expire", "schedule": 300.0},
    "escrow-auto-confirm": {"task": "exchange.tasks.escrow_auto_confirm", "schedule": crontab(minute=15)},
    "trade-housekeeping": {"task": "exchange.tasks.trade_housekeeping", "schedule": crontab(minute=30)},
    "usage-aggregate": {"task": "exchange.tasks.usage_aggregate", "schedule": crontab(minute=5)},
    "outbound-events-sweep": {"task": "exchange.tasks.outbound_events_sweep", "schedule": 120.0},
    "expiry-notices": {"task": "exchange.tasks.entitlements_expiring_notify", "schedule": crontab(minute=45)},
}

# The daily ledger check (hash chain and balances), stored as a LedgerVerification; 0-23, UTC.
LEDGER_VERIFY_HOUR_UTC = env_int("LEDGER_VERIFY_HOUR_UTC", 3, minimum=0, maximum=23)
CELERY_BEAT_SCHEDULE["ledger-verify-daily"] = {
    "task": "exchange.tasks.ledger_verify_scheduled",
    "schedule": crontab(minute=30, hour=LEDGER_VERIFY_HOUR_UTC),
}

# Refunds a gateway that did not answer left PENDING are sent again (same idempotency key) by a beat sweep:
# every REFUND_RETRY_SWEEP_SECONDS, those older than REFUND_RETRY_AFTER_SECONDS, and only while younger than
# REFUND_RETRY_MAX_AGE_SECONDS (Stripe keeps an idempotency key for 24 hours; a later retry could refund twice).
REFUND_RETRY_SWEEP_SECONDS = env_int("REFUND_RETRY_SWEEP_SECONDS", 300, minimum=30)
REFUND_RETRY_AFTER_SECONDS = env_int("REFUND_RETRY_AFTER_SECONDS", 300, minimum=0)
REFUND_RETRY_MAX_AGE_SECONDS = env_int("REFUND_RETRY_MAX_AGE_SECONDS", 23 * 3600, minimum=60, maximum=23 * 3600)
CELERY_BEAT_SCHEDULE["refunds-retry-pending"] = {
    "task": "exchange.tasks.refunds_retry_pending",
    "schedule": float(REFUND_RETRY_SWEEP_SECONDS),
}
# Payouts still PENDING after PAYOUT_SWEEP_AGE_SECONDS (their task gave up on a gateway outage, or its message was
# lost) get their send queued again every PAYOUT_SWEEP_SECONDS; the send reuses the payout's idempotency key.
PAYOUT_SWEEP_SECONDS = env_int("PAYOUT_SWEEP_SECONDS", 900, minimum=10)
PAYOUT_SWEEP_AGE_SECONDS = env_int("PAYOUT_SWEEP_AGE_SECONDS", 900, minimum=0)
CELERY_BEAT_SCHEDULE["payout-sweep"] = {"task": "exchange.tasks.payout_sweep", "schedule": float(PAYOUT_SWEEP_SECONDS)}

# --- auth -----------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "audit.lockouts.AxesRequestBackend",
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
SITE_ID = 1
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = env_choice("ACCOUNT_EMAIL_VERIFICATION", "mandatory", {"mandatory", "optional", "none"})
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_LOGOUT_ON_GET = False
LOGIN_REDIRECT_URL = "/"
LOGIN_URL = "/accounts/login/"

# --- accounts: lockouts and rate limits --------------------------------------------------------------------
# django-axes counts failed logins (allauth's /accounts/login/ and the admin's) per username: a locked account
# stays locked whichever address the guesses come from, so spreading them over a botnet does not help. The price
# (anyone can lock a victim out for the cool-off) is bounded by the short cool-off and by allauth's per-address
# limits below. Attempts are stored in the database: each failure is counted under a row lock with F() + 1, so
# concurrent failures are all counted, and a Redis flush cannot unlock an account.
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5, minimum=1, maximum=100)
AXES_COOLOFF_MINUTES = env_int("AXES_COOLOFF_MINUTES", 15, minimum=1, maximum=24 * 60)
AXES_COOLOFF_TIME = AXES_COOLOFF_MINUTES / 60  # hours, as axes reads a number
AXES_LOCKOUT_PARAMETERS = ["username"]
AXES_USERNAME_CALLABLE = "audit.lockouts.login_username"
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_VERBOSE = False  # no start-up banner on stderr (management commands' output stays theirs)
AXES_RESET_ON_SUCCESS = True
# A refused attempt during a lockout counts and restarts the cool-off, so a guesser who keeps going stays out.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = True
AXES_LOCKOUT_TEMPLATE = "account/lockout.html"
AXES_HTTP_RESPONSE_CODE = 429
AXES_ENABLE_ACCESS_FAILURE_LOG = True
# Never store what was typed in the password fields (axes keeps the rest of the POST for the admin).
AXES_SENSITIVE_PARAMETERS = ["password", "password1", "password2", "login", "username", "email"]
# allauth's own limits ("count/period/key": per ip, per key = the login or e-mail, per user), kept in the
# shared cache (Redis in production), so every web process sees the same counts.
ACCOUNT_RATE_LIMITS = {
    "login": env_str("ACCOUNT_RATE_LOGIN", "30/m/ip"),
    "login_failed": env_str("ACCOUNT_RATE_LOGIN_FAILED", "10/m/ip,5/5m/key"),
    "signup": env_str("ACCOUNT_RATE_SIGNUP", "10/10m/ip"),
    "reset_password": env_str("ACCOUNT_RATE_RESET_PASSWORD", "20/m/ip,5/m/key"),
    "reset_password_from_key": env_str("ACCOUNT_RATE_RESET_PASSWORD_FROM_KEY", "20/m/ip"),
    "change_password": env_str("ACCOUNT_RATE_CHANGE_PASSWORD", "5/m/user"),
    "manage_email": env_str("ACCOUNT_RATE_MANAGE_EMAIL", "10/m/user"),
    "confirm_email": env_str("ACCOUNT_RATE_CONFIRM_EMAIL", "1/3m/key"),
}
# --- end accounts --------------------------------------------------------------------------------------------

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Data Exchange <no-reply@exchange.localhost>")

# --- i18n -----------------------------------------------------------------
LANGUAGE_CODE = "en"
# The web pages speak English and Simplified Chinese; LocaleMiddleware picks one from the language cookie set by
# /i18n/setlang/ (exchange/i18n.py) or from Accept-Language. Messages of templates/ live in locale/, an app's in
# <app>/locale/. exchange.timezones.TimezoneMiddleware shows times in the zone of the browser's `tz` cookie.
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- static and private files ---------------------------------------------
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
# Uploaded data products are private: stored outside any served directory and
# handed out only through signed, entitlement-checked download links.
PRIVATE_STORAGE_ROOT = Path(env_str("PRIVATE_STORAGE_ROOT", str(VAR_DIR / "private"))).resolve()
# local: files under PRIVATE_STORAGE_ROOT; s3: a private S3 (or S3-compatible) bucket via django-storages.
STORAGE_BACKEND = env_choice("STORAGE_BACKEND", "local", {"local", "s3"})
_LOCAL_STORAGE = {
    "BACKEND": "django.core.files.storage.FileSystemStorage",
    "OPTIONS": {"location": str(PRIVATE_STORAGE_ROOT), "base_url": None},
}


def _s3_storage() -> dict:
    from botocore.config import Config

    bucket = env_str("AWS_STORAGE_BUCKET_NAME")
    if not bucket:
        raise ImproperlyConfigured("STORAGE_BACKEND=s3 needs AWS_STORAGE_BUCKET_NAME")
    access_key, secret_key = env_str("AWS_ACCESS_KEY_ID"), env_str("AWS_SECRET_ACCESS_KEY")
    if bool(access_key) != bool(secret_key):
        raise ImproperlyConfigured("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together (or neither)")
    options = {
        "bucket_name": bucket,
        # Objects are private; buyers only ever get short-lived presigned URLs made per download.
        "default_acl": "private",
        "querystring_auth": False,
        "file_overwrite": False,
        "endpoint_url": env_str("AWS_S3_ENDPOINT_URL") or None,
        "region_name": env_str("AWS_S3_REGION_NAME") or None,
        # Presigned download URLs use SigV4 (X-Amz-Expires); every region accepts it, new ones only it.
        "signature_version": "s3v4",
        # botocore waits 60 s to connect and 60 s per read by default, and retries. client_config replaces the
        # Config django-storages builds, so the signature version is repeated here. (/healthz uses 2 s, no retry.)
        "client_config": Config(
            signature_version="s3v4",
            connect_timeout=env_int("S3_CONNECT_TIMEOUT", 5, minimum=1),
            read_timeout=env_int("S3_READ_TIMEOUT", 30, minimum=1),
            retries={"max_attempts": env_int("S3_MAX_RETRIES", 3, minimum=0), "mode": "standard"},
        ),
    }
    if access_key:  # otherwise boto3's own chain (instance role, ~/.aws) supplies credentials
        options.update(access_key=access_key, secret_key=secret_key)
    return {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}


STORAGES = {
    "default": _s3_storage() if STORAGE_BACKEND == "s3" else _LOCAL_STORAGE,
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if DEPLOY_ENV == "production"
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

# --- the exchange ---------------------------------------------------------
UPLOAD_MAX_BYTES = env_int("UPLOAD_MAX_BYTES", 100 * 1024 * 1024, minimum=1)
# The most one merchant may keep stored: the data files of every version of all its products (default 5 GiB).
MERCHANT_STORAGE_QUOTA_BYTES = env_int("MERCHANT_STORAGE_QUOTA_BYTES", 5 * 1024**3, minimum=1)
# The web catalog's rendered results are shared for this long (listings.catalog_cache; any catalog change retires
# them at once); 0 renders every request.
CATALOG_CACHE_SECONDS = env_int("CATALOG_CACHE_SECONDS", 30, minimum=0, maximum=3600)
PROFILE_SAMPLE_ROWS = env_int("PROFILE_SAMPLE_ROWS", 10, minimum=0, maximum=1000)
# Let Django spill uploads to a temporary file early, so a large upload never
# sits in memory; the service streams from it to storage.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
DOWNLOAD_LINK_TTL_SECONDS = env_int("DOWNLOAD_LINK_TTL_SECONDS", 900, minimum=10)
PLATFORM_FEE_BPS = env_int("PLATFORM_FEE_BPS", 1000, minimum=0, maximum=10000)  # 1000 bps = 10 %
# A flat fee the buyer pays on top of a one-time purchase, per currency ("CNY:2.00,USD:0.30"); none by default.
BUYER_SERVICE_FEE = env_money_map("BUYER_SERVICE_FEE")
DISPUTE_HOLD_DAYS = env_int("DISPUTE_HOLD_DAYS", 0, minimum=0)
# Transaction certificates are signed with this Ed25519 key (PEM, PKCS#8; exchange/signing_key.py). Generated
# on first use outside production; production refuses to start without it (a new key orphans old certificates).
EXCHANGE_SIGNING_KEY_FILE = Path(env_str("EXCHANGE_SIGNING_KEY_FILE", str(VAR_DIR / "signing_key.pem"))).resolve()
if DEPLOY_ENV == "production" and not EXCHANGE_SIGNING_KEY_FILE.is_file():
    raise ImproperlyConfigured(f"EXCHANGE_SIGNING_KEY_FILE {EXCHANGE_SIGNING_KEY_FILE} is required in production")
# After a key rotation: the public keys (PEM files, comma-separated) of the keys the exchange signed with before,
# so the certificates they signed still verify. Their content is checked when first used (exchange/signing_key.py).
EXCHANGE_SIGNING_RETIRED_KEYS = [Path(path).resolve() for path in env_list("EXCHANGE_SIGNING_RETIRED_KEYS", [])]
if missing_keys := [str(path) for path in EXCHANGE_SIGNING_RETIRED_KEYS if not path.is_file()]:
    raise ImproperlyConfigured(f"EXCHANGE_SIGNING_RETIRED_KEYS names missing files: {', '.join(missing_keys)}")
# Escrow: a paid, delivered order is confirmed automatically after this many days.
ESCROW_AUTO_CONFIRM_DAYS = env_int("ESCROW_AUTO_CONFIRM_DAYS", 7, minimum=0)
CHECKOUT_EXPIRY_HOURS = env_int("CHECKOUT_EXPIRY_HOURS", 24, minimum=1)
ACCESS_REQUEST_TTL_DAYS = env_int("ACCESS_REQUEST_TTL_DAYS", 7, minimum=1)
# Subscriptions whose renewal failed keep access this long before it ends.
SUBSCRIPTION_GRACE_DAYS = env_int("SUBSCRIPTION_GRACE_DAYS", 3, minimum=0)
DEFAULT_CURRENCY = env_choice("DEFAULT_CURRENCY", "CNY", {"CNY", "USD", "EUR"})

# Stripe is used when its keys are set (or PAYMENT_GATEWAY=stripe); otherwise the sandbox.
STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY")
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET")
STRIPE_API_BASE = env_str("STRIPE_API_BASE", "https://api.stripe.com").rstrip("/")
STRIPE_TIMEOUT_SECONDS = env_int("STRIPE_TIMEOUT_SECONDS", 20, minimum=1)
STRIPE_MAX_NETWORK_RETRIES = env_int("STRIPE_MAX_NETWORK_RETRIES", 2, minimum=0, maximum=10)
PAYMENT_GATEWAY = env_choice(
    "PAYMENT_GATEWAY", "stripe" if STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET else "sandbox", {"sandbox", "stripe"}
)
if PAYMENT_GATEWAY == "stripe" and not (STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET):
    raise ImproperlyConfigured("PAYMENT_GATEWAY=stripe needs STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET")
SANDBOX_WEBHOOK_SECRET = env_str("SANDBOX_WEBHOOK_SECRET") or ("whsec_sandbox_" + SECRET_KEY[:32])
SANDBOX_DELAY_SECONDS = env_int("SANDBOX_DELAY_SECONDS", 10, minimum=0)
WEBHOOK_TOLERANCE_SECONDS = env_int("WEBHOOK_TOLERANCE_SECONDS", 300, minimum=1)
# Helper drains a backlog of gateway events asks for: the worker's concurrency minus one shares it out.
# Inline tasks (eager mode) would only run them nested in the drain, so there none are asked for.
PAYMENT_EVENT_DRAIN_HELPERS = env_int(
    "PAYMENT_EVENT_DRAIN_HELPERS", 0 if CELERY_TASK_ALWAYS_EAGER else 1, minimum=0, maximum=16
)

# --- delivery (issue 5) ----------------------------------------------------
# Preparing a delivery re-reads each stored file: size always, SHA-256 only up to this size (bigger files
# would hold a worker for minutes; their size is still checked).
DELIVERY_VERIFY_SHA256_MAX_BYTES = env_int("DELIVERY_VERIFY_SHA256_MAX_BYTES", 64 * 1024 * 1024, minimum=0)
# A delivery whose files are missing or corrupt is retried after BACKOFF, 2*BACKOFF, 4*BACKOFF... (capped at
# BACKOFF_MAX) seconds; the MAX_ATTEMPTS-th failure fails it and refunds the order.
DELIVERY_RETRY_BACKOFF_SECONDS = env_int("DELIVERY_RETRY_BACKOFF_SECONDS", 30, minimum=1)
DELIVERY_RETRY_BACKOFF_MAX_SECONDS = env_int("DELIVERY_RETRY_BACKOFF_MAX_SECONDS", 3600, minimum=1)
DELIVERY_MAX_ATTEMPTS = env_int("DELIVERY_MAX_ATTEMPTS", 5, minimum=1, maximum=50)
# Celery tasks (dotted paths) that listings hands each newly published version's pk to, after commit:
# listings never imports exchange, so the exchange subscribes here.
VERSION_PUBLISHED_TASKS = env_list("VERSION_PUBLISHED_TASKS", ["exchange.tasks.delivery_version_published"])
# The paid-but-undelivered sweeper (beat): how often it runs, and how old a grant (or a delivery still
# pending) must be before the sweeper enqueues its delivery again instead of waiting for the original task.
DELIVERY_SWEEP_SECONDS = env_int("DELIVERY_SWEEP_SECONDS", 60, minimum=1)
DELIVERY_SWEEP_AGE_SECONDS = env_int("DELIVERY_SWEEP_AGE_SECONDS", 60, minimum=0)
CELERY_BEAT_SCHEDULE["delivery-sweep"] = {
    "task": "exchange.tasks.delivery_sweep",
    "schedule": float(DELIVERY_SWEEP_SECONDS),
}
# How downloads are served once every check passed: django streams the bytes itself; xaccel hands
# the file to nginx (X-Accel-Redirect, see deploy/nginx/exchange.conf); s3 redirects to a presigned URL.
DOWNLOAD_SERVING = env_choice("DOWNLOAD_SERVING", "django", {"django", "xaccel", "s3"})
if DOWNLOAD_SERVING == "s3" and STORAGE_BACKEND != "s3":
    raise ImproperlyConfigured("DOWNLOAD_SERVING=s3 needs STORAGE_BACKEND=s3")
if DOWNLOAD_SERVING == "xaccel" and STORAGE_BACKEND != "local":
    raise ImproperlyConfigured("DOWNLOAD_SERVING=xaccel needs STORAGE_BACKEND=local (nginx reads the files from disk)")
# nginx's internal location aliased to PRIVATE_STORAGE_ROOT; the storage path is appended to it.
DOWNLOAD_XACCEL_PREFIX = env_str("DOWNLOAD_XACCEL_PREFIX", "/_protected/")
if not (DOWNLOAD_XACCEL_PREFIX.startswith("/") and DOWNLOAD_XACCEL_PREFIX.endswith("/")):
    raise ImproperlyConfigured(f"DOWNLOAD_XACCEL_PREFIX must start and end with '/', got {DOWNLOAD_XACCEL_PREFIX!r}")
DOWNLOAD_PRESIGNED_TTL_SECONDS = env_int("DOWNLOAD_PRESIGNED_TTL_SECONDS", 60, minimum=1, maximum=3600)

# --- data API and metering (issue 5) ---------------------------------------
# Active (unrevoked, unexpired) API keys a user may hold at once.
API_KEYS_MAX_ACTIVE = env_int("API_KEYS_MAX_ACTIVE", 10, minimum=1, maximum=1000)
# Calls per API key (or per signed-in user) per clock minute; beyond: 429 with Retry-After.
DATA_API_RATE_PER_MINUTE = env_int("DATA_API_RATE_PER_MINUTE", 120, minimum=1)
DATA_API_DEFAULT_LIMIT = env_int("DATA_API_DEFAULT_LIMIT", 100, minimum=1)
DATA_API_MAX_LIMIT = env_int("DATA_API_MAX_LIMIT", 5000, minimum=1, maximum=100_000)
if DATA_API_DEFAULT_LIMIT > DATA_API_MAX_LIMIT:
    raise ImproperlyConfigured("DATA_API_DEFAULT_LIMIT must not exceed DATA_API_MAX_LIMIT")
# One DuckDB per request, on one thread and within this memory, so a query cannot starve the box.
DATA_API_DUCKDB_MEMORY_MB = env_int("DATA_API_DUCKDB_MEMORY_MB", 256, minimum=16)
# Local copies of files the storage cannot open by path (S3) or that are not UTF-8, one per sha256.
DATA_API_CACHE_DIR = Path(env_str("DATA_API_CACHE_DIR", str(VAR_DIR / "data-api-cache"))).resolve()

# --- notifications and outbound webhooks (issue 5) -------------------------
# Entitlements whose period ends within this many days get one "about to expire" notice per period.
ENTITLEMENT_EXPIRY_NOTICE_DAYS = env_int("ENTITLEMENT_EXPIRY_NOTICE_DAYS", 3, minimum=1, maximum=60)
# Outbound webhooks POST signed events to URLs users register. Plain http and addresses inside the
# network (loopback, private, link-local...) are refused unless switched on, so an endpoint can never be
# used to reach the exchange's own services (SSRF); the address is checked when each event is sent.
OUTBOUND_WEBHOOK_ALLOW_HTTP = env_bool("OUTBOUND_WEBHOOK_ALLOW_HTTP", False)
OUTBOUND_WEBHOOK_ALLOW_PRIVATE = env_bool("OUTBOUND_WEBHOOK_ALLOW_PRIVATE", False)
# A PEM file of CAs to trust for endpoints' certificates instead of the system's (a private CA).
OUTBOUND_WEBHOOK_CA_BUNDLE = env_str("OUTBOUND_WEBHOOK_CA_BUNDLE") or None
if OUTBOUND_WEBHOOK_CA_BUNDLE and not Path(OUTBOUND_WEBHOOK_CA_BUNDLE).is_file():
    raise ImproperlyConfigured(f"OUTBOUND_WEBHOOK_CA_BUNDLE is not a readable file: {OUTBOUND_WEBHOOK_CA_BUNDLE!r}")
OUTBOUND_WEBHOOK_TIMEOUT_SECONDS = env_int("OUTBOUND_WEBHOOK_TIMEOUT_SECONDS", 5, minimum=1, maximum=60)
OUTBOUND_WEBHOOK_MAX_ATTEMPTS = env_int("OUTBOUND_WEBHOOK_MAX_ATTEMPTS", 8, minimum=1, maximum=30)
# Retry n waits BACKOFF * 2**(n-1) seconds, capped at BACKOFF_MAX, less up to 10 % jitter.
OUTBOUND_WEBHOOK_BACKOFF_SECONDS = env_int("OUTBOUND_WEBHOOK_BACKOFF_SECONDS", 30, minimum=1)
OUTBOUND_WEBHOOK_BACKOFF_MAX_SECONDS = env_int("OUTBOUND_WEBHOOK_BACKOFF_MAX_SECONDS", 3600, minimum=1)
OUTBOUND_WEBHOOKS_PER_USER = env_int("OUTBOUND_WEBHOOKS_PER_USER", 5, minimum=0, maximum=100)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- catalog benchmark ----------------------------------------------------
# Enables the naive icontains search (?naive=1 on the catalog API), a baseline
# for `make bench-search` only; never set it in production.
BENCH_ENABLE_NAIVE = env_bool("BENCH_ENABLE_NAIVE", False) and DEPLOY_ENV != "production"

# --- the REST API (/api/v1/, common/api.py) ---------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "common.api.ApiCursorPagination",
    "DEFAULT_THROTTLE_CLASSES": ["common.api.KeyOrUserRateThrottle"],
    "EXCEPTION_HANDLER": "common.api.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "PAGE_SIZE": 50,
}
# Requests per key (else user, else address) across the API, and purchases per key or user per minute.
API_RATE = env_str("API_RATE", "600/min")
API_MONEY_RATE_PER_MINUTE = env_int("API_MONEY_RATE_PER_MINUTE", 20, minimum=1)
SPECTACULAR_SETTINGS = {
    "TITLE": "Data Exchange API",
    "DESCRIPTION": (
        "Buy, download and use data products, and run a merchant's catalogue, without the web UI. "
        'Authenticate with `Authorization: Api-Key <key>`; errors answer `{"error": {"code", "message"}}`.'
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "EXTENSIONS_INFO": {},
    # Several models have a ``status``: each enum gets its own name in the schema.
    "ENUM_NAME_OVERRIDES": {
        "OrderStatusEnum": "exchange.choices.OrderStatus",
        "EntitlementStatusEnum": "exchange.choices.EntitlementStatus",
        "AccessRequestStatusEnum": "exchange.choices.AccessRequestStatus",
        "DeliveryStatusEnum": "exchange.choices.DeliveryStatus",
        "PayoutStatusEnum": "exchange.choices.PayoutStatus",
        "ListingStatusEnum": "listings.choices.ListingStatus",
        "PlanKindEnum": "listings.choices.PlanKind",
        "FileFormatEnum": "listings.choices.FileFormat",
        "NotificationKindEnum": "exchange.choices.NotificationKind",
        "OutboundEventStatusEnum": "exchange.choices.OutboundEventStatus",
    },
}

# --- production hardening: security headers, cookies, HSTS, CSP (exchange/settings_security.py) ---------------------
from exchange.settings_security import *  # noqa: E402, F403
