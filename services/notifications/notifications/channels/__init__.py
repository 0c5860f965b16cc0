"""Delivery channels: email over SMTP, signed webhooks (also SMS and push gateways), the log."""

from notifications.channels.base import Channel, ChannelPaused, Message, SendResult

__all__ = ["Channel", "ChannelPaused", "Message", "SendResult"]
