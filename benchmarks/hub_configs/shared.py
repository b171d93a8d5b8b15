# Extra JupyterHub config of the benchmarks' shared facility (benchmarks.common.Context.facility),
# loaded after the demo's: its admin service may also manage groups (bench_broker_sustained puts
# users created through the API into the facility's group; ``append`` adds to the demo config's
# roles instead of replacing them), and the hub logs its full garbage collections.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for ``benchmarks``

from benchmarks.hub_gc import install_gc_log  # noqa: E402

c = get_config()  # noqa: F821 - provided by JupyterHub

c.JupyterHub.load_roles.append({"name": "bench-admin-groups", "scopes": ["admin:groups"], "services": ["casa-test-admin"]})
install_gc_log()
