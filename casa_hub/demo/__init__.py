"""The embedded demo facility started by ``casa-hub demo``."""
