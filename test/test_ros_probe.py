"""conftest.RosProbe.call: a lost service reply is asked for again, and a silent service fails by name."""

import pytest
from conftest import RosProbe
from rcl_interfaces.srv import ListParameters

SERVICE = "/lossy/list_parameters"


@pytest.fixture
def lossy():
    """A probe serving SERVICE itself, whose replies are dropped while ``lost[0]`` is positive."""
    with RosProbe("ros_probe_test") as probe:
        requests, lost = [], [1]

        def handle(request, response):
            requests.append(request)
            response.result.names = ["answered"]
            return response

        service = probe.node.create_service(ListParameters, SERVICE, handle)
        send = service.send_response

        def send_unless_lost(response, header):
            # What Fast DDS does under load with a reply whose reader the server has not matched yet.
            if lost[0] > 0:
                lost[0] -= 1
            else:
                send(response, header)

        service.send_response = send_unless_lost
        yield probe, requests, lost


def test_a_lost_reply_is_requested_again(lossy):
    probe, requests, _lost = lossy
    response = probe.call(ListParameters, SERVICE, ListParameters.Request(), timeout_s=1.0)
    assert response.result.names == ["answered"] and len(requests) == 2


def test_a_service_that_never_answers_fails_naming_it(lossy):
    probe, requests, lost = lossy
    lost[0] = 10
    with pytest.raises(pytest.fail.Exception, match=f"no reply from {SERVICE} to 3 requests"):
        probe.call(ListParameters, SERVICE, ListParameters.Request(), timeout_s=0.3)
    assert len(requests) == 3
