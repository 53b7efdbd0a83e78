"""Security: TLS, authentication (API keys, passwords + TOTP, JWT), RBAC, audit log, limits.

Submodules are imported where they are used (no heavy imports here); the optional
dependencies come with ``pip install 'cvdeploy[security]'``.
"""
