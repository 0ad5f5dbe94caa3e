import redis.asyncio as aioredis


async def test_real_redis_server(aredis: aioredis.Redis) -> None:
    info = await aredis.info("server")
    assert info["redis_version"]
    assert (await aredis.config_get("appendonly"))["appendonly"] == "yes"
    await aredis.set("k", "v")
    assert await aredis.get("k") == b"v"
