"""The OpenADR 3.0.1 VTN the grid agent serves with ``--openadr3``: clients and tokens, durable objects, routes."""
