"""Former name of ``casa_hub.site_file`` (drop-ins written for earlier releases import it)."""

from casa_hub.site_file import SiteSettingsError, apply, apply_section, read_site_settings

__all__ = ["SiteSettingsError", "apply", "apply_section", "read_site_settings"]
