"""Format variants family: raw_volume → volume_{tiff,hdf5,zarr,parquet,n5}, each verified."""

import dagster as dg

from fib_assets.defs.formats.assets import variant_assets

defs = dg.Definitions(assets=variant_assets)
