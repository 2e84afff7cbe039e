"""The hub: the server every client and agent dials out to.

Nothing is imported here, so ``import freight.hub.<module>`` loads only that
module (and what it needs), never the web app; the hub is started by
``freight hub`` (``freight.hub.server``).
"""
