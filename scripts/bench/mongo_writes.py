"""What the MongoDB-protocol server behind the analytics benchmark writes per second, by kind
of write, with pymongo in batches of 1,000 (the service's `update` commands carry up to 1,000
statements too): the ceiling of any service that keeps its state there.

Usage: python3 scripts/bench/mongo_writes.py [MONGODB_URL] [DOCUMENTS]
"""
import sys
import time

import pymongo

url = sys.argv[1] if len(sys.argv) > 1 else "mongodb://127.0.0.1:27017/?directConnection=true"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
client = pymongo.MongoClient(url)
db = client[f"bench_mongo_writes_{int(time.time())}"]


def state(j, nxt):
    key = f"C{j:07}"
    return {"_id": f"tp|spent|{key}", "tp": "t|0", "k": "spent", "key": key, "next": nxt,
            "v": {"cents": j, "invoices": 3}}


def updates(name, coll, stmt):
    t = time.time()
    for i in range(0, n, 1000):
        db.command({"update": coll, "updates": [stmt(j) for j in range(i, min(i + 1000, n))],
                    "ordered": False})
    print(f"   {name}: {n / (time.time() - t):,.0f} documents/s")


updates("conditional upsert, new (the state's first write of a key)", "s",
        lambda j: {"q": {"_id": state(j, 5)["_id"], "next": {"$lt": 5}}, "u": state(j, 5), "upsert": True})
updates("conditional upsert, existing (the state's later writes)", "s",
        lambda j: {"q": {"_id": state(j, 6)["_id"], "next": {"$lt": 6}}, "u": state(j, 6), "upsert": True})
updates("upsert by _id, existing (a result document)", "s",
        lambda j: {"q": {"_id": state(j, 7)["_id"]}, "u": state(j, 7), "upsert": True})
t = time.time()
for i in range(0, n, 1000):
    db["i"].insert_many([state(j, 1) for j in range(i, min(i + 1000, n))], ordered=False)
print(f"   insert: {n / (time.time() - t):,.0f} documents/s")
client.drop_database(db.name)
