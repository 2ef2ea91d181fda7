"""The Chalice application: blueprints only, no logic."""

from chalice.app import Chalice

from chalicelib import config, observability
from chalicelib.api import adjustments as corrections
from chalicelib.api import catalog, dashboard, ingest_dialects, openapi, service_lines, usage, usage_events, workspaces
from chalicelib.api.http import PathOwner, answer_the_rest
from chalicelib.dialects import meter_api, metronome, scalr
from chalicelib.workers import pipeline

config.check_environment()  # a deployed function without its secrets stops here, in Lambda's init phase

app = Chalice(app_name="usage-metering")
app.register_middleware(observability.observe, "all")
app.register_blueprint(catalog.bp)
app.register_blueprint(usage_events.bp)
app.register_blueprint(usage.bp)
app.register_blueprint(service_lines.bp)
app.register_blueprint(workspaces.bp)
app.register_blueprint(meter_api.bp)
app.register_blueprint(metronome.bp)
app.register_blueprint(scalr.bp)
ingest_dialects.register(app)  # Metronome, CloudEvents/OpenMeter and Stripe ingest
app.register_blueprint(pipeline.bp)
app.register_blueprint(openapi.bp)
app.register_blueprint(dashboard.bp)  # the usage page (GET /dashboard) and the routes it reads
app.register_blueprint(corrections.bp)  # voids and adjustments (scope metering:adjust)

# Which dialect answers an unknown path or method (by path prefix; everything else is native).
PATH_OWNERS = [
    PathOwner("/v1/meters/{}/subscriptions", meter_api.METER_API),
    PathOwner("/v1/meter-subscriptions", meter_api.METER_API),
    PathOwner("/v1/meter-usage", meter_api.METER_API),
    PathOwner("/v1/usage", metronome.METRONOME, methods=frozenset({"POST"})),
    PathOwner("/v1/ingest", metronome.METRONOME),
    PathOwner("/usage-statistics", scalr.SCALR),
    *ingest_dialects.PATH_OWNERS,
    *(PathOwner(prefix, metronome.METRONOME, edge=False) for prefix in metronome.METRONOME_PATH_PREFIXES),
]
answer_the_rest(app, PATH_OWNERS)
