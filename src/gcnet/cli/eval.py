"""placeholder (being written)"""


def register(sub):
    p = sub.add_parser("eval", help="(being written)")
    p.set_defaults(func=lambda args: 1)
