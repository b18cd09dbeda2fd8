"""Blueprints: webhooks, auth, queue, health, simulator."""
