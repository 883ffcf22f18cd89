"""Bridges to other analog-AI tools. Nothing here is imported by swimkit's core; each
bridge imports its tool only when used (``swimkit.interop.aihwkit`` needs
``pip install "swimkit[aihwkit]"``)."""
