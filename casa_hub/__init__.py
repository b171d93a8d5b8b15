"""casa_hub: a JupyterHub extension bundle for HEP analysis facilities."""

__version__ = "0.1.0.dev0"
