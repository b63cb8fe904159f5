"""Raw acquisitions family: landing zone → raw_acquisition → raw_volume, with QC checks."""

import dagster as dg

from fib_assets.defs.acquisitions.assets import raw_acquisition, raw_volume
from fib_assets.defs.acquisitions.sensors import landing_zone_sensor

defs = dg.Definitions(
    assets=[raw_acquisition, raw_volume],
    sensors=[landing_zone_sensor],
)
