"""moto's server, with DynamoDB transactions made proportional to the items they touch, and each
request's backend looked up once per host.

moto's `transact_write_items` deep-copies every table a transaction names, once per item, so it can
roll back after a failed condition. That costs time and memory proportional to the whole table:
with a few thousand items (the routing storm: 20 workers, 100 agents, 2,000 emails) every
transaction took tens of milliseconds and moto grew to gigabytes. Here the table copy is skipped
and only the items the transaction names are saved and put back on failure, which is the same
rollback (moto computes indexes from the items at query time, so nothing else changes).

moto serves each request on a thread of its own and takes no lock: a transaction checks and applies
its items one by one, so two transactions on the same item could both pass their version condition
and one write would be lost (the routing storm caught an agent over capacity that way). DynamoDB
applies a conditional write or a transaction atomically; here every write (put, update, delete,
and the transactions and batches made of them) holds one lock, so each is atomic against the others.

moto's dispatcher also finds the backend of every request by listing its package directory and
matching hundreds of URL patterns, under one lock that every request thread waits for; the answer
for a host never changes, so it is remembered.

moto's `Table.query` starts from `all_items()`, which sorts every item of the table (comparing
`DynamoType`s in Python) before the query filters them, and then scans them all for one partition,
of the table or of an index. A query sorts its own results, so here it gets only the items of the
partition it names: the table's own partition, or the items of an index partition as kept by a map
that every write (put, update, delete, in or out of a transaction) keeps current. moto still checks
each item against the key condition, so the map only has to hold every item that may match. Its
final sort compares plain strings and numbers instead of `DynamoType`s.

moto writes every DynamoDB answer through its generic, model-driven serializer, which walks each
attribute of each item in Python; for reads, whose answers are already DynamoDB's JSON, it took most
of moto's time. Reads whose answer is plain JSON (no binary values, no timestamps) are written with
`json.dumps` instead; anything else still takes the serializer.

moto's SQS `send_message` reads the queue's `attributes` for one flag, and that property counts
every message in the queue (visible, delayed, in flight) with date arithmetic: with thousands of
delayed offer time-outs queued, each send cost milliseconds. Inside `send_message` the property
answers just that flag. `receive_message` did the same for every message it looked at, to read the
retention period; that check reads the queue's setting directly.

Werkzeug's log line per request is dropped (errors are still logged).

Run exactly like `moto_server` (infra/moto.sh does): `python moto_server.py -H 127.0.0.1 -p 45660`.
"""

import copy
import json
import logging
import sys
import threading

import moto.dynamodb.models as dynamodb_models
from moto import backends as moto_backends
from moto.dynamodb.models.table import Table
from moto.dynamodb.responses import DynamoResult
from moto.core.utils import unix_time
from moto.moto_server import werkzeug_app
from moto.sqs import models as sqs_models
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


_write_lock = threading.RLock()


def _atomic(method):
    def locked(self, *args, **kwargs):
        with _write_lock:
            return method(self, *args, **kwargs)

    locked.__name__ = method.__name__
    return locked


_original = dynamodb_models.DynamoDBBackend.transact_write_items


def transact_write_items(self, transact_items):
    with _write_lock:
        return _transact_write_items(self, transact_items)


def _transact_write_items(self, transact_items):
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


_query_scope = threading.local()
_all_items = Table.all_items


def _index_hash_attrs(table):
    """{index name: its partition key attribute} for the indexes with a single partition key."""
    found = {}
    for index in list(table.global_indexes) + list(table.indexes):
        hashes = [k["AttributeName"] for k in index.schema if k["KeyType"] == "HASH"]
        if len(hashes) == 1:
            found[index.name] = hashes[0]
    return found


def _item_key(item):
    return (item.hash_key.type, item.hash_key.value, item.range_key.type if item.range_key else None,
            item.range_key.value if item.range_key else None)


# moto serves each request on its own thread; the map changes only under this lock.
_partitions_lock = threading.RLock()


def _partitions(table):
    """The index partition map of `table`, built from its items the first time it is needed."""
    with _partitions_lock:
        state = table.__dict__.get("_mailroom_partitions")
        if state is None:
            state = table.__dict__["_mailroom_partitions"] = ({}, {})  # partitions, memberships
            for item in _all_items(table):
                _place(table, item)
        return state


def _place(table, item):
    with _partitions_lock:
        partitions, memberships = _partitions(table)
        key = _item_key(item)
        for old in memberships.pop(key, ()):
            partitions.get(old, {}).pop(key, None)
        places = []
        for index, attr in _index_hash_attrs(table).items():
            value = item.attrs.get(attr)
            if value is None or not isinstance(value.value, (str, bytes)):
                continue
            place = (index, value.type, value.value)
            partitions.setdefault(place, {})[key] = item
            places.append(place)
        memberships[key] = places


def _forget(table, item):
    with _partitions_lock:
        partitions, memberships = _partitions(table)
        key = _item_key(item)
        for old in memberships.pop(key, ()):
            partitions.get(old, {}).pop(key, None)


_table_put_item = Table.put_item
_table_delete_item = Table.delete_item
_backend_update_item = dynamodb_models.DynamoDBBackend.update_item


def table_put_item(self, *args, **kwargs):
    item = _table_put_item(self, *args, **kwargs)
    if item is not None:
        _place(self, item)
    return item


def table_delete_item(self, *args, **kwargs):
    item = _table_delete_item(self, *args, **kwargs)
    if item is not None:
        _forget(self, item)
    return item


def backend_update_item(self, table_name, *args, **kwargs):
    item = _backend_update_item(self, table_name, *args, **kwargs)
    if item is not None:
        _place(self.get_table(table_name), item)
    return item


def all_items(self):
    if getattr(_query_scope, "table", None) is not self:
        return _all_items(self)
    return _query_scope.items


def _sort_key(value):
    return value.value if value.type == "S" else value.cast_value


def sorted_items(self, hash_key_attrs, range_key_attrs, items):
    attrs = self._generate_attr_to_sort_by(hash_key_attrs, range_key_attrs)
    items.sort(key=lambda x: tuple(_sort_key(x.attrs[a]) for a in attrs))
    return items


_query = Table.query


def query(self, hash_key, *args, **kwargs):
    index_name = kwargs.get("index_name", args[6] if len(args) > 6 else None)
    conditions = kwargs.get("hash_key_conditions") or []
    if index_name is None and hash_key is not None:
        hash_set = self.items.get(hash_key)
        if hash_set is None:
            items = []
        else:
            items = list(hash_set.values()) if self.range_key_attr else [hash_set]
    elif index_name is not None and len(conditions) == 1 and index_name in _index_hash_attrs(self):
        _, value = conditions[0]
        with _partitions_lock:
            partitions, _ = _partitions(self)
            items = list(partitions.get((index_name, value.type, value.value), {}).values())
    else:
        return _query(self, hash_key, *args, **kwargs)
    _query_scope.table, _query_scope.items = self, items
    try:
        return _query(self, hash_key, *args, **kwargs)
    finally:
        _query_scope.table = None


_READS = frozenset({"GetItem", "Query", "Scan", "BatchGetItem"})
_execute_result = DynamoResult.execute_result


def execute_result(self, context):
    if context.operation_model.name in _READS and isinstance(self.result, dict):
        try:
            body = json.dumps({k: v for k, v in self.result.items() if v is not None})
        except (TypeError, ValueError):
            pass  # bytes or datetimes: the serializer knows how to write them
        else:
            return 200, {"Content-Type": "application/x-amz-json-1.0"}, body
    return _execute_result(self, context)


_sending = threading.local()
_queue_attributes = sqs_models.Queue.attributes


def queue_attributes(self):
    if getattr(_sending, "active", False):
        if not self.fifo_queue:
            return {}
        return {"ContentBasedDeduplication": str(bool(self.content_based_deduplication)).lower()}
    return _queue_attributes.fget(self)


_send_message = sqs_models.SQSBackend.send_message


def send_message(self, *args, **kwargs):
    _sending.active = True
    try:
        return _send_message(self, *args, **kwargs)
    finally:
        _sending.active = False


def is_message_valid_based_on_retention_period(self, queue_name, message):
    queue = self.get_queue(queue_name)
    return int(queue.message_retention_period) + message.sent_timestamp / 1000 > unix_time()


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
Table.all_items = all_items
Table.sorted_items = sorted_items
Table.put_item = table_put_item
Table.delete_item = table_delete_item
dynamodb_models.DynamoDBBackend.update_item = backend_update_item
# After the update_item above: a batch write goes through put_item and delete_item one by one.
for _name in ("put_item", "update_item", "delete_item"):
    setattr(dynamodb_models.DynamoDBBackend, _name, _atomic(getattr(dynamodb_models.DynamoDBBackend, _name)))
DynamoResult.execute_result = execute_result
sqs_models.Queue.attributes = property(queue_attributes)
sqs_models.SQSBackend.send_message = send_message
sqs_models.SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period
Table.query = query
logging.getLogger("werkzeug").setLevel(logging.WARNING)

if __name__ == "__main__":
    sys.argv[0] = "moto_server"
    sys.exit(main())
