"""The overlay: tenant networks joined across hosts by VXLAN (`plan` says how)."""
