"""The HTTP side of Rota (``rota serve``): the WhatsApp Cloud API webhook, the JSON API and
the admin console, one stateless ASGI application."""
