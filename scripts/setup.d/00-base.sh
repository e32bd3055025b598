# Sourced by scripts/test (and scripts/demo): what every build needs.
ensure_packages build-essential pkg-config
