# Extra JupyterHub config of the benchmarks' casa_hub hub, loaded after the demo facility's config:
# CasaOIDCAuthenticator (from the demo config) and CasaFastSpawner, with the grants and integrations
# of benchmarks/casa_settings.py. Token and config files go under the facility's state directory.
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for ``benchmarks``

from benchmarks import casa_settings  # noqa: E402
from benchmarks.hub_gc import install_gc_log, install_gc_signal  # noqa: E402

c = get_config()  # noqa: F821 - provided by JupyterHub

c.JupyterHub.spawner_class = "benchmarks.casa_fast_spawner.CasaFastSpawner"
c.CasaFastSpawner.casa_root = str(Path(os.environ["CASA_DEMO_STATE"]) / "homes")
casa_settings.apply(c)
install_gc_signal()
install_gc_log()
