"""Release: export, manifest, Ed25519 signing and verification, datasheet."""
