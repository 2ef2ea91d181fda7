"""The Chalice application: blueprints only, no logic."""

from chalice.app import Chalice

from chalicelib.api import catalog

app = Chalice(app_name="usage-metering")
app.register_blueprint(catalog.bp)
