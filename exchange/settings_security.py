"""Production hardening settings (issue 9), imported at the end of exchange/settings.py."""
