"""The Chalice application: blueprints only, no logic."""

from chalice.app import Chalice

from chalicelib import observability
from chalicelib.api import catalog, openapi, service_lines, usage, usage_events, workspaces
from chalicelib.dialects import meter_api, metronome, scalr
from chalicelib.workers import pipeline

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
app.register_blueprint(pipeline.bp)
app.register_blueprint(openapi.bp)
