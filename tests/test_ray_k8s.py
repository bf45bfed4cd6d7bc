"""k8s/rayservice.yaml: valid YAML with the fields KubeRay and Ray Serve need, pointing at this package's entry points.
Only checked here, never applied: no Kubernetes cluster is available where the tests run."""
from pathlib import Path
import yaml, pytest
from query_router.ray_serve import parse_app_args, deployment_options

MANIFEST = Path(__file__).resolve().parents[1]/'k8s'/'rayservice.yaml'

@pytest.fixture(scope='module')
def svc(): return yaml.safe_load(MANIFEST.read_text())

@pytest.fixture(scope='module')
def serve_config(svc):
    assert isinstance(svc['spec']['serveConfigV2'], str), 'serveConfigV2 must be a YAML string (KubeRay passes it to Ray Serve as is)'
    return yaml.safe_load(svc['spec']['serveConfigV2'])

def test_rayservice_header(svc):
    assert svc['apiVersion'] == 'ray.io/v1' and svc['kind'] == 'RayService'
    assert svc['metadata']['name']
    assert set(svc['spec']) >= {'serveConfigV2', 'rayClusterConfig'}

def test_serve_config_targets_the_app_builder(serve_config):
    (app,) = serve_config['applications']
    assert set(app) >= {'name', 'route_prefix', 'import_path', 'args', 'deployments'}
    assert app['import_path'] == 'query_router.ray_serve:app_builder' and app['route_prefix'] == '/'
    mod, fn = app['import_path'].split(':')
    import importlib; assert callable(getattr(importlib.import_module(mod), fn))
    args = parse_app_args(app['args']) # every argument is one app_builder knows
    assert args['artifacts'].startswith('/')
    (dep,) = app['deployments']
    assert dep['name'] == 'QueryRouter' and dep['ray_actor_options']['num_cpus'] > 0
    a = dep['autoscaling_config']
    assert 1 <= a['min_replicas'] <= a['initial_replicas'] <= a['max_replicas'] and a['target_ongoing_requests'] > 0
    # the same fields `deployment_options` produces, so the manifest and `query-router serve --ray` configure the same things
    ours = deployment_options(2, min_replicas=2, max_replicas=16, target_ongoing=8)
    assert set(dep) - {'name'} <= set(ours) | {'num_replicas'}
    assert set(a) == set(ours['autoscaling_config'])

def _pods(cluster):
    yield 'head', cluster['headGroupSpec']
    for g in cluster['workerGroupSpecs']: yield g['groupName'], g

def test_every_pod_mounts_the_artifacts(svc, serve_config):
    cluster = svc['spec']['rayClusterConfig']
    assert cluster['rayVersion'] and cluster['workerGroupSpecs']
    art = Path(serve_config['applications'][0]['args']['artifacts'])
    images = set()
    for name, group in _pods(cluster):
        assert 'rayStartParams' in group, name
        spec = group['template']['spec']
        (c,) = spec['containers']
        assert c['name'] and c['image'], name
        images.add(c['image'])
        mounts = {m['name']: m['mountPath'] for m in c.get('volumeMounts', [])}
        vols = {v['name'] for v in spec.get('volumes', [])}
        assert any(art.is_relative_to(p) for p in mounts.values()), f'{name}: the artifact path {art} is not on a mounted volume'
        assert set(mounts) <= vols, f'{name}: a mount without a volume'
        assert c['resources']['requests']['cpu'] and c['resources']['limits']['memory'], name
    assert len(images) == 1, 'every pod must run the same image (same Ray, same Python, same package)'
    for g in cluster['workerGroupSpecs']: assert g['minReplicas'] <= g['replicas'] <= g['maxReplicas']
