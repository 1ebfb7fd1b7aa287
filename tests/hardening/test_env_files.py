"""Secrets from files named by the environment (NAME_FILE), and error messages that never print them."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from exchange.env import env_str
from tests.hardening.conftest import SECRET_KEY, last_error_line, run_python


def test_value_read_from_the_named_file_stripped(monkeypatch, tmp_path):
    path = tmp_path / "stripe_key"
    path.write_text("  sk_live_from_a_file\n")
    monkeypatch.delenv("X_STRIPE_KEY", raising=False)
    monkeypatch.setenv("X_STRIPE_KEY_FILE", str(path))
    assert env_str("X_STRIPE_KEY") == "sk_live_from_a_file"
    assert env_str("X_STRIPE_KEY", "default") == "sk_live_from_a_file"


def test_plain_variable_and_default_without_a_file(monkeypatch):
    monkeypatch.delenv("X_PLAIN_FILE", raising=False)
    monkeypatch.setenv("X_PLAIN", "direct")
    assert env_str("X_PLAIN") == "direct"
    monkeypatch.delenv("X_PLAIN")
    assert env_str("X_PLAIN", "fallback") == "fallback"


def test_both_set_is_refused(monkeypatch, tmp_path):
    path = tmp_path / "secret"
    path.write_text("from-file")
    monkeypatch.setenv("X_SECRET", "from-env")
    monkeypatch.setenv("X_SECRET_FILE", str(path))
    with pytest.raises(ImproperlyConfigured) as excinfo:
        env_str("X_SECRET")
    assert str(excinfo.value) == "Set X_SECRET or X_SECRET_FILE, not both"
    assert path.read_text() == "from-file"


def test_unreadable_file_names_the_variable_not_the_secret(monkeypatch, tmp_path):
    monkeypatch.delenv("X_SECRET", raising=False)
    missing = tmp_path / "missing"
    monkeypatch.setenv("X_SECRET_FILE", str(missing))
    with pytest.raises(ImproperlyConfigured) as excinfo:
        env_str("X_SECRET")
    assert str(excinfo.value) == (
        f"X_SECRET_FILE names a file that cannot be read ({str(missing)!r}: No such file or directory)"
    )
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfesk_live_hidden")
    monkeypatch.setenv("X_SECRET_FILE", str(binary))
    with pytest.raises(ImproperlyConfigured) as excinfo:
        env_str("X_SECRET")
    assert str(excinfo.value) == f"X_SECRET_FILE names a file that cannot be read ({str(binary)!r}: UnicodeDecodeError)"
    assert "sk_live_hidden" not in str(excinfo.value)
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__ is True


def test_production_reads_its_secrets_from_files(production_env, tmp_path):
    key_file = tmp_path / "django_secret_key"
    key_file.write_text(SECRET_KEY[::-1] + "\n")
    stripe_key, webhook_secret = tmp_path / "stripe_key", tmp_path / "stripe_whsec"
    stripe_key.write_text("sk_test_fromfile")
    webhook_secret.write_text("whsec_fromfile")
    env = {k: v for k, v in production_env.items() if k != "DJANGO_SECRET_KEY"}
    env.update(
        DJANGO_SECRET_KEY_FILE=str(key_file),
        STRIPE_SECRET_KEY_FILE=str(stripe_key),
        STRIPE_WEBHOOK_SECRET_FILE=str(webhook_secret),
    )
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        f"print(s.SECRET_KEY == open({str(key_file)!r}).read().strip(), "
        "s.STRIPE_SECRET_KEY, s.STRIPE_WEBHOOK_SECRET, s.PAYMENT_GATEWAY)"
    )
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "sk_test_fromfile", "whsec_fromfile", "stripe"]


def test_production_with_both_secret_and_file_refuses_without_printing_it(production_env, tmp_path):
    key_file = tmp_path / "django_secret_key"
    key_file.write_text("x" * 64)
    env = {**production_env, "DJANGO_SECRET_KEY_FILE": str(key_file)}
    result = run_python("import django; django.setup()", env)
    assert result.returncode == 1
    assert last_error_line(result) == (
        "django.core.exceptions.ImproperlyConfigured: Set DJANGO_SECRET_KEY or DJANGO_SECRET_KEY_FILE, not both"
    )
    assert SECRET_KEY not in result.stderr + result.stdout
    assert "x" * 64 not in result.stderr + result.stdout


def test_production_database_url_file_unreadable(production_env, tmp_path):
    env = {k: v for k, v in production_env.items() if k != "DATABASE_URL"}
    env["DATABASE_URL_FILE"] = str(tmp_path / "nowhere")
    result = run_python("import django; django.setup()", env)
    assert result.returncode == 1
    assert last_error_line(result) == (
        "django.core.exceptions.ImproperlyConfigured: DATABASE_URL_FILE names a file that cannot be read "
        f"({str(tmp_path / 'nowhere')!r}: No such file or directory)"
    )
