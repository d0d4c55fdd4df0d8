"""federated subpackage."""
