"""Security: TLS, authentication (API keys, passwords + TOTP, JWT), RBAC, audit log, limits.

Primitives only: nothing here imports FastAPI, Starlette or :mod:`cvdeploy.serve`. The HTTP
side (the authorizer, the auth routes, the audit middleware, the login page) is
:mod:`cvdeploy.serve.authorizer`, which the server installs from these primitives.

Submodules are imported where they are used (no heavy imports here); the optional
dependencies come with ``pip install 'cvdeploy[security]'``.
"""
