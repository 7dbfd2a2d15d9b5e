"""moto's server, with DynamoDB transactions made proportional to the items they touch, and each
request's backend looked up once per host.

moto's `transact_write_items` deep-copies every table a transaction names, once per item, so it can
roll back after a failed condition. That costs time and memory proportional to the whole table:
with a few thousand items (the routing storm: 20 workers, 100 agents, 2,000 emails) every
transaction took tens of milliseconds and moto grew to gigabytes. Here the table copy is skipped
and only the items the transaction names are saved and put back on failure, which is the same
rollback (moto computes indexes from the items at query time, so nothing else changes).

moto's dispatcher also finds the backend of every request by listing its package directory and
matching hundreds of URL patterns, under one lock that every request thread waits for; the answer
for a host never changes, so it is remembered.

Run exactly like `moto_server` (infra/moto.sh does): `python moto_server.py -H 127.0.0.1 -p 45660`.
"""

import copy
import json
import sys
import threading

import moto.dynamodb.models as dynamodb_models
from moto import backends as moto_backends
from moto.dynamodb.models.table import Table
from moto.moto_server import werkzeug_app
from moto.server import main

_in_transaction = threading.local()


class _CopyWithoutTables:
    """The `copy` module as moto's DynamoDB models see it: inside a transaction, a table is not
    copied (the original's rollback then re-assigns the same table, a no-op)."""

    def __getattr__(self, name):
        return getattr(copy, name)

    @staticmethod
    def deepcopy(value, memo=None):
        if isinstance(value, Table) and getattr(_in_transaction, "active", False):
            return value
        return copy.deepcopy(value, memo)


def _key_of(table, op):
    if "Item" in op:
        item = op["Item"]
        key = {table.hash_key_attr: item[table.hash_key_attr]}
        if table.range_key_attr is not None:
            key[table.range_key_attr] = item[table.range_key_attr]
        return key
    return op.get("Key")


_original = dynamodb_models.DynamoDBBackend.transact_write_items


def transact_write_items(self, transact_items):
    saved = {}
    for entry in transact_items:
        _, op = next(iter(entry.items()))
        table_name = op.get("TableName")
        if not table_name or table_name not in self.tables:
            continue
        try:
            key = _key_of(self.tables[table_name], op)
        except KeyError:
            continue  # a malformed item: the original raises the right error
        if key is None:
            continue
        current = self.get_item(table_name, key)
        marker = (table_name, json.dumps(key, sort_keys=True))
        if marker not in saved:
            saved[marker] = (table_name, key, current.to_json()["Attributes"] if current else None)
    _in_transaction.active = True
    try:
        return _original(self, transact_items)
    except Exception:
        for table_name, key, attributes in saved.values():
            if attributes is None:
                self.delete_item(table_name, key)
            else:
                self.put_item(table_name, attributes)
        raise
    finally:
        _in_transaction.active = False


_modules = tuple(moto_backends.list_of_moto_modules())
_backend_for_host = werkzeug_app.DomainDispatcherApplication.get_backend_for_host


def get_backend_for_host(self, host):
    cache = self.__dict__.setdefault("_mailroom_backend_for_host", {})
    if host not in cache:
        cache[host] = _backend_for_host(self, host)
    return cache[host]


moto_backends.list_of_moto_modules = lambda: iter(_modules)
werkzeug_app.DomainDispatcherApplication.get_backend_for_host = get_backend_for_host
dynamodb_models.copy = _CopyWithoutTables()
dynamodb_models.DynamoDBBackend.transact_write_items = transact_write_items

if __name__ == "__main__":
    sys.argv[0] = "moto_server"
    sys.exit(main())
