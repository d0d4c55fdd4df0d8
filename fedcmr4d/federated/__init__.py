"""Federation with Flower (the only subpackage that imports ``flwr``).

``client_app`` / ``server_app`` are the Flower apps declared in ``pyproject.toml``; ``site`` is
the Flower-free body of a site's reply; ``settings`` types the run and node config;
``validation`` checks updates; ``strategies`` builds the aggregator; ``state`` checkpoints every
round; ``audit_stage`` runs the federated memorization audit; ``simulation`` runs a consortium
in process (``fedcmr4d demo``, tests); ``certs`` makes deployment key material. See
docs/coordinator.md and docs/site.md.
"""
