"""Settings for pgseal's Django migration fixture.

The connection comes only from the libpq environment variables PGHOST,
PGPORT, PGUSER, PGDATABASE and (optionally) PGPASSWORD.  A PGHOST that starts
with "/" is a unix-socket directory, which psycopg/libpq accept as host.
"""
import os

SECRET_KEY = "pgseal-test-fixture-not-secret"
DEBUG = False
ALLOWED_HOSTS = []
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "shop",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ["PGHOST"],
        "PORT": os.environ["PGPORT"],
        "USER": os.environ["PGUSER"],
        "NAME": os.environ["PGDATABASE"],
        "PASSWORD": os.environ.get("PGPASSWORD", ""),
        # May run through PgBouncer in transaction pooling mode: no
        # server-side prepared statements, no server-side (named) cursors.
        "OPTIONS": {"prepare_threshold": None},
        "DISABLE_SERVER_SIDE_CURSORS": True,
    }
}
