"""placeholder (being written)"""


def register(sub):
    p = sub.add_parser("demo", help="(being written)")
    p.set_defaults(func=lambda args: 1)
