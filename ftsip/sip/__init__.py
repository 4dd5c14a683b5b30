"""The SIP message layer: parse, inspect, edit and build messages (RFC 3261 §7, §8.2.6, §18-20, §25).

The parser has two twins with the same API and behaviour: ``ftsip.sip.pyparse`` (pure Python) and
``ftsip._fast.sipparse`` (Cython); ``ftsip.sip.backend`` picks the compiled one when it is built.
"""
from ftsip.sip.errors import SipParseError
from ftsip.sip.message import REASONS, Edit, make_response, parse, received_via, response_target, to_tag_for
from ftsip.sip.model import CSeq, Credentials, Message, NameAddr, Request, Response, Uri, Via, unescape

__all__ = [
    "SipParseError", "parse", "make_response", "received_via", "response_target", "to_tag_for", "Edit",
    "REASONS", "CSeq", "Credentials", "Message", "NameAddr", "Request", "Response", "Uri", "Via", "unescape",
]
