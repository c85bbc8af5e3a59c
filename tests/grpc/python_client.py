"""A client of the engine's gRPC face from outside the project: grpcio, grpcio-health-checking,
grpcio-reflection and protobuf, and no code generated from proto/.

Usage: python_client.py <host:port> <sku> <user_id> <idempotency-key>

It lists the services by reflection, checks health (the whole server and
flashsale.v1.Reservations), builds flashsale.v1.ReserveRequest and its answer from the
reflected descriptors, reserves one unit of <sku> for <user_id> under <idempotency-key>,
reserves again with the same key (a replay), and reserves a SKU that does not exist,
decoding the google.rpc.Status (and its ErrorInfo) it is refused with. It prints one JSON
object with what it saw, and exits non-zero, saying why on stderr, on any failure.
Run by scripts/grpc-python-client.sh, which installs the packages.
"""

import collections
import json
import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

# Every call, the reflection database's own included, gives up after this.
TIMEOUT_SECONDS = 10.0
RESERVE = "/flashsale.v1.Reservations/Reserve"


class Failure(Exception):
    """What went wrong, said plainly."""


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class DefaultTimeout(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Gives every call that sets no deadline one of TIMEOUT_SECONDS (the reflection
    database's calls set none)."""

    def _details(self, details):
        if details.timeout is not None:
            return details
        return _CallDetails(
            details.method,
            TIMEOUT_SECONDS,
            details.metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


def message_class(descriptor):
    """The message class of a descriptor, with whichever API this protobuf has."""
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(descriptor.file.pool).GetPrototype(descriptor)


def enum_name(message, field):
    """The name of the enum value in `message.field`."""
    number = getattr(message, field)
    values = message.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number
    return values[number].name if number in values else str(number)


def rpc_failure(what, error):
    return Failure(f"{what}: {error.code().name}: {error.details()}")


def list_services(channel):
    reflection_db = ProtoReflectionDescriptorDatabase(channel)
    try:
        services = sorted(reflection_db.get_services())
    except grpc.RpcError as error:
        raise rpc_failure("listing the services by reflection", error) from error
    return reflection_db, services


def check_health(channel, services):
    stub = health_pb2_grpc.HealthStub(channel)
    health = {}
    for service in services:
        try:
            answer = stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_SECONDS
            )
        except grpc.RpcError as error:
            raise rpc_failure(f"checking the health of {service!r}", error) from error
        health[service] = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    return health


def reserve_call(channel, pool):
    """Reservations.Reserve, its messages built from the reflected descriptors."""
    try:
        method = pool.FindServiceByName("flashsale.v1.Reservations").FindMethodByName("Reserve")
        request_class = message_class(pool.FindMessageTypeByName("flashsale.v1.ReserveRequest"))
    except KeyError as error:
        raise Failure(f"reflection does not describe Reservations.Reserve: {error}") from error
    if method is None:
        raise Failure("reflection describes no method Reserve on flashsale.v1.Reservations")
    response_class = message_class(method.output_type)
    call = channel.unary_unary(
        RESERVE,
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=response_class.FromString,
    )

    def reserve(sku, user_id, key):
        return call(
            request_class(sku=sku, user_id=user_id),
            metadata=(("idempotency-key", key),),
            timeout=TIMEOUT_SECONDS,
        )

    return reserve


def reserved(answer):
    if not answer.HasField("reservation"):
        raise Failure(f"Reserve answered without a reservation: {answer}")
    reservation = answer.reservation
    return {
        "reservation_id": reservation.reservation_id,
        "sku": reservation.sku,
        "user_id": reservation.user_id,
        "quantity": reservation.quantity,
        "status": enum_name(reservation, "status"),
        "replayed": answer.replayed,
    }


def refusal(error):
    """The code of a refused call and the ErrorInfo of its google.rpc.Status."""
    details = [
        value
        for key, value in (error.trailing_metadata() or ())
        if key == "grpc-status-details-bin"
    ]
    if not details:
        raise Failure(
            f"the refusal ({error.code().name}: {error.details()}) has no grpc-status-details-bin"
        )
    status = status_pb2.Status.FromString(details[0])
    if status.code != error.code().value[0]:
        raise Failure(
            f"google.rpc.Status says code {status.code}, the call {error.code().name}"
        )
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return {"code": error.code().name, "reason": info.reason, "domain": info.domain}
    raise Failure(f"the google.rpc.Status has no ErrorInfo: {status}")


def run(target, sku, user_id, key):
    with grpc.insecure_channel(target) as raw:
        try:
            grpc.channel_ready_future(raw).result(timeout=TIMEOUT_SECONDS)
        except grpc.FutureTimeoutError as error:
            raise Failure(f"cannot connect to {target} in {TIMEOUT_SECONDS} s") from error
        channel = grpc.intercept_channel(raw, DefaultTimeout())

        reflection_db, services = list_services(channel)
        health = check_health(channel, ["", "flashsale.v1.Reservations"])
        reserve = reserve_call(channel, descriptor_pool.DescriptorPool(reflection_db))

        try:
            first = reserved(reserve(sku, user_id, key))
        except grpc.RpcError as error:
            raise rpc_failure(f"reserving {sku} for {user_id}", error) from error
        try:
            again = reserved(reserve(sku, user_id, key))
        except grpc.RpcError as error:
            raise rpc_failure(f"reserving {sku} for {user_id} again", error) from error

        unknown = f"{sku}-unknown"
        try:
            answer = reserve(unknown, user_id, f"{key}-unknown")
        except grpc.RpcError as error:
            unknown_sku = refusal(error)
        else:
            raise Failure(f"reserving the unknown SKU {unknown} succeeded: {answer}")

    return {
        "services": services,
        "health": health,
        "reservation": first,
        "replay": {"reservation_id": again["reservation_id"], "replayed": again["replayed"]},
        "unknown_sku": unknown_sku,
    }


def main(argv):
    if len(argv) != 5:
        print(f"usage: {argv[0]} <host:port> <sku> <user_id> <idempotency-key>", file=sys.stderr)
        return 2
    try:
        seen = run(*argv[1:])
    except Failure as failure:
        print(f"python_client: {failure}", file=sys.stderr)
        return 1
    except grpc.RpcError as error:
        print(
            f"python_client: a call failed: {error.code().name}: {error.details()}",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(seen, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
