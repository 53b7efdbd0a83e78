"""Serving: an HTTP inference server with dynamic batching, monitoring and versions.

Needs the ``serve`` extra (``pip install cvdeploy[serve]``). The public entry points:

- :func:`cvdeploy.serve.app.create_app` and :class:`cvdeploy.serve.config.ServeConfig`
- :class:`cvdeploy.serve.registry.ModelRegistry` (versions and stages)
- :func:`cvdeploy.serve.logging_store.export_logs` (sampled request logs)
- :func:`cvdeploy.serve.authorizer.install_security` (authentication, roles, audit, limits
  over HTTP, built from the :mod:`cvdeploy.security` primitives)

Import them from their modules; this package imports nothing heavy on its own.
"""
