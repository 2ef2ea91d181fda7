"""The ingest dialects' blueprints and the paths whose errors each answers in its own shape.

Metronome's `POST /v1/ingest`, OpenMeter's CloudEvents `POST /api/v1/events` and Stripe's
`POST /v1/billing/meter_events`; their routes live with their dialects (parse, map, ingest,
render), this module only hands them to the app.
"""

from __future__ import annotations

from chalice.app import Chalice

from chalicelib.api.http import PathOwner
from chalicelib.dialects import cloudevents, metronome_ingest, stripe_meter_events

BLUEPRINTS = (metronome_ingest.bp, cloudevents.bp, stripe_meter_events.bp)

# Unknown paths and other methods under these answer in the dialect's envelope (see api.http.PathOwner);
# /v1/ingest is Metronome's already, with its other paths.
PATH_OWNERS = (
    PathOwner("/api/v1", cloudevents.OPENMETER),
    PathOwner("/v1/billing", stripe_meter_events.STRIPE),
)


def register(app: Chalice) -> None:
    """Register the ingest dialects' blueprints (before `answer_the_rest`)."""
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
