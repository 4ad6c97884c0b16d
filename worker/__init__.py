"""Rota: round-robin assignment of WhatsApp Business chats to CRM users, decided in Redis."""
