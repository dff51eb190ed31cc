"""The generic API channel: any shop, form or bot posts signed JSON in and gets replies by callback."""

from channels.api.adapter import ApiChannel, ApiChannelConfig, sign

__all__ = ["ApiChannel", "ApiChannelConfig", "sign"]
