"""Settings for the control plane. Everything that differs between machines comes from the
environment; the embedded demo (DFL_EMBEDDED=1) needs no external service at all."""

import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import dj_database_url

ROOT_DIR = Path(__file__).resolve().parents[2]
VAR_DIR = Path(os.environ.get("DFL_VAR_DIR", ROOT_DIR / "var"))


def env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


# Embedded mode: SQLite, in-memory channel layer, eager Celery, eth-tester chain.
EMBEDDED = env_bool("DFL_EMBEDDED")
DEBUG = env_bool("DEBUG", default=False)

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if DEBUG or EMBEDDED or "pytest" in sys.modules:
        SECRET_KEY = "insecure-development-key-never-use-in-production"
    else:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured("SECRET_KEY must be set (or run with DEBUG=1 / DFL_EMBEDDED=1).")

# The platform's Ed25519 key (hex of the 32-byte private key): it signs every round plan and
# consent grant, and peers pin its public key at hello. Required in production; development,
# the embedded demo and the tests derive one from SECRET_KEY so all their processes agree.
PLATFORM_SIGNING_KEY = os.environ.get("PLATFORM_SIGNING_KEY", "")
if not PLATFORM_SIGNING_KEY:
    if DEBUG or EMBEDDED or "pytest" in sys.modules:
        PLATFORM_SIGNING_KEY = hashlib.sha256(b"dfl-platform-signing-key:" + SECRET_KEY.encode()).hexdigest()
    else:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            "PLATFORM_SIGNING_KEY must be set: 64 hex characters, e.g. python -c 'import secrets; print(secrets.token_hex(32))'"
        )

# Encrypts the custodial test wallets' keys at rest (ledger.wallets): a Fernet key (urlsafe
# base64 of 32 bytes). Required in production; development and tests derive one from SECRET_KEY.
WALLET_ENCRYPTION_KEY = os.environ.get("WALLET_ENCRYPTION_KEY", "")
if not WALLET_ENCRYPTION_KEY and (DEBUG or EMBEDDED or "pytest" in sys.modules):
    import base64

    WALLET_ENCRYPTION_KEY = base64.urlsafe_b64encode(
        hashlib.sha256(b"dfl-wallet-encryption-key:" + SECRET_KEY.encode()).digest()
    ).decode()

ALLOWED_HOSTS = [h for h in os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "accounts",
    "nodes",
    "jobs",
    "ledger",
    "live",
    "modelstore",
    "datasets",
    "ninja",  # its ReDoc page from our static files (no CDN)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "hub.middleware.api_errors_as_json",  # /api/ answers JSON, never an HTML error page
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "hub.urls"
ASGI_APPLICATION = "hub.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [ROOT_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES: dict[str, Any]
if EMBEDDED and not os.environ.get("DATABASE_URL"):
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    # daphne's threads, the in-process peers and participants' own peers write at once: WAL lets
    # readers go on during a write, IMMEDIATE takes the write lock when a transaction starts
    # (no "database is locked" upgrade failures mid-transaction), and writers wait up to 30 s.
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "demo.sqlite3",
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
else:
    DATABASES = {
        "default": dj_database_url.parse(
            os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/dfl"), conn_max_age=0
        )
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

# Email (password reset links). EMAIL_URL: smtp://user:password@host:587 (STARTTLS) or
# smtps://user:password@host:465 (TLS); unset: the console backend (the mail goes to the log).
_email_url = urlsplit(os.environ.get("EMAIL_URL", ""))  # not a setting: it holds the password
if _email_url.scheme in ("smtp", "smtps"):
    EMAIL_HOST = _email_url.hostname or "localhost"
    EMAIL_PORT = _email_url.port or (465 if _email_url.scheme == "smtps" else 587)
    EMAIL_HOST_USER = unquote(_email_url.username or "")
    EMAIL_HOST_PASSWORD = unquote(_email_url.password or "")
    EMAIL_USE_SSL = _email_url.scheme == "smtps"
    EMAIL_USE_TLS = _email_url.scheme == "smtp" and EMAIL_PORT != 25
    EMAIL_TIMEOUT = 10
    _email_default = "django.core.mail.backends.smtp.EmailBackend"
elif _email_url.scheme:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("EMAIL_URL must start with smtp:// or smtps://")
else:
    _email_default = "django.core.mail.backends.console.EmailBackend"
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", _email_default)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "DFL platform <noreply@localhost>")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", ROOT_DIR / "staticfiles"))  # filled by `manage.py collectstatic`
# plotly.js is served from the plotly package's bundled copy (no CDN, nothing committed twice).
_plotly = importlib.util.find_spec("plotly")
if _plotly is None or not _plotly.origin:
    raise ImportError("plotly is not installed: pip install -c constraints.txt -e '.[platform]'")
PLOTLY_JS_DIR = Path(_plotly.origin).parent / "package_data"
STATICFILES_DIRS = [ROOT_DIR / "static", ("vendor/plotly", PLOTLY_JS_DIR)]
# Development and the embedded demo serve static files from the source tree; production serves
# only what `collectstatic` put in STATIC_ROOT (the production-stack tests run it as deployers do).
WHITENOISE_USE_FINDERS = DEBUG or EMBEDDED or "pytest" in sys.modules

# Every Redis connection the platform opens (channel layer, Celery broker) is built with these
# options. redis-py 8 gives each connection socket_timeout=5 by default, and channels_redis 4.3
# blocks on an idle channel for 5 s (BZPOPMIN): the read then times out, and daphne closes every
# idle websocket with 1011. The socket timeout must stay above every blocking read; keepalive
# and health checks find dead connections instead. tests/test_redis_timeouts.py holds the rule.
REDIS_SOCKET_TIMEOUT_S = float(os.environ.get("REDIS_SOCKET_TIMEOUT_S", "60"))
REDIS_CONNECTION_OPTIONS = {
    "socket_timeout": REDIS_SOCKET_TIMEOUT_S,
    "socket_connect_timeout": 10,
    "socket_keepalive": True,
    "health_check_interval": 30,
    "retry_on_timeout": True,
}

# Channel layer: Redis in production and tests, in-memory in the embedded demo (unless
# DFL_CHANNEL_LAYER=redis: `python -m bench websocket` runs an embedded site on Redis's layer).
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
if EMBEDDED and os.environ.get("DFL_CHANNEL_LAYER", "") != "redis":
    CHANNEL_LAYERS: dict[str, Any] = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": REDIS_URL, "max_connections": 500, **REDIS_CONNECTION_OPTIONS}]},
        }
    }
# The peers' exchange (nodes.exchange): a Redis of its own for the weights peers swap, never the
# one above. PEER_REDIS_URL is how the platform reaches it, as its admin user (the server's
# `default` user disabled); each node gets a user of its own at hello. PEER_REDIS_PUBLIC_URL is
# the address peers are told (default: PEER_REDIS_URL without its credentials). Unset: the
# embedded demo's way, plans on the default layer and no exchange for remote peers.
PEER_REDIS_URL = os.environ.get("PEER_REDIS_URL", "")
PEER_REDIS_PUBLIC_URL = os.environ.get("PEER_REDIS_PUBLIC_URL", "")
if PEER_REDIS_URL:
    CHANNEL_LAYERS["peers"] = {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": PEER_REDIS_URL, **REDIS_CONNECTION_OPTIONS}], "prefix": "asgi"},
    }

# Celery: its own broker, RabbitMQ, which peers never reach (the Redis they use for weights must
# not let them queue orchestration tasks); eager in the embedded demo. A Redis broker works too
# (a Redis of its own, never the peers'), with the connection options above.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_TRANSPORT_OPTIONS = dict(REDIS_CONNECTION_OPTIONS)
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = EMBEDDED
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULE = {
    "start-ready-jobs": {"task": "jobs.tasks.start_ready_jobs", "schedule": 10.0},
    "enforce-round-deadlines": {"task": "jobs.tasks.enforce_deadlines", "schedule": 5.0},
    "mark-offline-nodes": {"task": "jobs.tasks.mark_offline_nodes", "schedule": 5.0},
    "resend-plans": {"task": "jobs.tasks.resend_plans", "schedule": 5.0},
    "settle-ended-jobs": {"task": "ledger.tasks.settle_ended_jobs", "schedule": 30.0},
    "register-final-models": {"task": "ledger.tasks.register_final_models", "schedule": 60.0},
}
# Everything that signs with the operator key runs on a queue of its own, consumed by one worker
# process with concurrency 1 (compose's `settler`): receipt waits never delay round closing, and
# one signer at a time keeps nonces in order (ledger.settlement also holds an advisory lock).
SETTLEMENT_QUEUE = "settlement"
CELERY_TASK_ROUTES = {"ledger.tasks.*": {"queue": SETTLEMENT_QUEUE}}

# Chain: eth-tester in process for the demo, anvil (JSON-RPC) otherwise.
CHAIN_RPC_URL = os.environ.get("CHAIN_RPC_URL", "eth-tester" if EMBEDDED else "http://127.0.0.1:8545")
# Operator key that deploys contracts and pays rewards. Defaults to the first well-known
# development account only on development chains (eth-tester / anvil on localhost).
CHAIN_PRIVATE_KEY = os.environ.get("CHAIN_PRIVATE_KEY", "")
# The test-token faucet (custodial wallets): on for development chains, off unless set elsewhere.
FAUCET_TOKENS = int(os.environ.get("FAUCET_TOKENS", "1000"))
FAUCET_EVERY_S = int(os.environ.get("FAUCET_EVERY_S", "600"))
TEST_CHAIN_IDS = {31337, 131277322940537}  # anvil, eth-tester
# A block explorer for the chain (e.g. https://sepolia.etherscan.io): the audit page links
# transactions to <explorer>/tx/<hash>. Empty: hashes are shown as text.
CHAIN_EXPLORER_URL = os.environ.get("CHAIN_EXPLORER_URL", "").rstrip("/")

# Node liveness and rounds.
# Who may read /metrics besides staff: comma-separated addresses or networks (REMOTE_ADDR, as
# daphne sees it: the scraper's own address, not a forwarded one).
METRICS_ALLOWED_IPS = [a.strip() for a in os.environ.get("METRICS_ALLOWED_IPS", "127.0.0.1").split(",") if a.strip()]
NODE_ONLINE_SECONDS = int(os.environ.get("NODE_ONLINE_SECONDS", "60"))
MAX_WEIGHTS_BYTES = int(os.environ.get("MAX_WEIGHTS_BYTES", str(512 * 1024 * 1024)))

# Final models (modelstore): safetensors blobs stored by content hash, never decoded here.
MODEL_STORE_DIR = Path(os.environ.get("MODEL_STORE_DIR", ROOT_DIR / "var" / "models"))
MAX_MODEL_BYTES = int(os.environ.get("MAX_MODEL_BYTES", str(256 * 1024 * 1024)))

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
# Behind a TLS-terminating proxy (HTTPS=1): the proxy must set X-Forwarded-Proto and strip it
# from clients; cookies go over HTTPS only, plain HTTP is redirected, browsers are told to stay
# on HTTPS. `manage.py check --deploy` is clean with these (tests/test_deploy_settings.py).
if not DEBUG and not EMBEDDED and env_bool("HTTPS", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = True
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

# Rate limits ("N/s", "N/m" or "N/h"), counted in the cache every server process shares.
LOGIN_RATE_LIMIT = os.environ.get("LOGIN_RATE_LIMIT", "10/m")  # login attempts per client address and username
NODE_API_RATE_LIMIT = os.environ.get("NODE_API_RATE_LIMIT", "600/m")  # node API calls per node token
if EMBEDDED:
    CACHES: dict[str, Any] = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "cache",
            "OPTIONS": {k: v for k, v in REDIS_CONNECTION_OPTIONS.items() if k != "retry_on_timeout"},
        }
    }

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "daphne": {"level": "WARNING"},
        "celery.app.trace": {"level": "WARNING"},
        "django.channels.server": {"level": "WARNING"},
    },
}
