"""Device models of the PC that WeensyOS expects, one module per device."""
