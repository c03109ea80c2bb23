"""Agents, one module per family; each registers its classes with ``@register``."""
