"""Routed container networking with security groups (Calico prototype re-creation)."""
