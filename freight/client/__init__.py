"""The client side of Freight: sessions with the hub, transfers, relayed
connections. Programs use :class:`freight.Client` (``freight.client.api``)."""
