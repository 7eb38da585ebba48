// router_test: the :path -> (service, method) table (server/router.c).
#include <gtest/gtest.h>

#include <string>
#include <vector>

extern "C" {
#include "router.h"
}

namespace {

void OnStart(vk_call_t *, const ProtobufCMessage *) {}

vk_method_t Method(const char *name) {
  vk_method_t m{};
  m.name = name;
  m.kind = VK_RPC_UNARY;
  m.on_start = OnStart;
  return m;
}

vk_service_t Service(const char *name, const vk_method_t *methods, size_t n) {
  vk_service_t s{};
  s.name = name;
  s.methods = methods;
  s.n_methods = n;
  return s;
}

const vk_route_t *Find(const vk_router_t *r, const std::string &path) {
  return vk_router_find(r, path.data(), path.size());
}

bool HasService(const vk_router_t *r, const std::string &path) {
  return vk_router_has_service(r, path.data(), path.size()) != 0;
}

class RouterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    vk_router_init(&r_);
  }
  void TearDown() override {
    vk_router_cleanup(&r_);
  }
  vk_router_t r_;
};

TEST_F(RouterTest, EmptyRouterFindsNothing) {
  EXPECT_EQ(Find(&r_, "/a.B/C"), nullptr);
  EXPECT_FALSE(HasService(&r_, "/a.B/C"));
}

TEST_F(RouterTest, AddAndFind) {
  const vk_method_t methods[] = {Method("Check"), Method("Watch")};
  vk_service_t svc = Service("grpc.health.v1.Health", methods, 2);
  ASSERT_EQ(vk_router_add(&r_, &svc), VK_OK);

  const vk_route_t *check = Find(&r_, "/grpc.health.v1.Health/Check");
  ASSERT_NE(check, nullptr);
  EXPECT_EQ(check->service, &svc);
  EXPECT_EQ(check->method, &methods[0]);
  EXPECT_EQ(std::string(check->path, check->path_len),
            "/grpc.health.v1.Health/Check");
  const vk_route_t *watch = Find(&r_, "/grpc.health.v1.Health/Watch");
  ASSERT_NE(watch, nullptr);
  EXPECT_EQ(watch->method, &methods[1]);

  // Near misses: case, prefix, suffix, missing slash.
  EXPECT_EQ(Find(&r_, "/grpc.health.v1.Health/check"), nullptr);
  EXPECT_EQ(Find(&r_, "/grpc.health.v1.Health/Chec"), nullptr);
  EXPECT_EQ(Find(&r_, "/grpc.health.v1.Health/CheckX"), nullptr);
  EXPECT_EQ(Find(&r_, "grpc.health.v1.Health/Check"), nullptr);
  EXPECT_EQ(Find(&r_, "/grpc.health.v1.Health/"), nullptr);
  EXPECT_EQ(Find(&r_, ""), nullptr);
}

TEST_F(RouterTest, FindUsesLengthNotNul) {
  const vk_method_t methods[] = {Method("M")};
  vk_service_t svc = Service("p.S", methods, 1);
  ASSERT_EQ(vk_router_add(&r_, &svc), VK_OK);
  const char buf[] = "/p.S/Mxyz";
  EXPECT_NE(vk_router_find(&r_, buf, 6), nullptr);
  EXPECT_EQ(vk_router_find(&r_, buf, 7), nullptr);
  EXPECT_EQ(vk_router_find(&r_, buf, 5), nullptr);
}

TEST_F(RouterTest, DuplicateServiceRefused) {
  const vk_method_t methods[] = {Method("A")};
  vk_service_t svc = Service("p.S", methods, 1);
  vk_service_t again = Service("p.S", methods, 1);
  ASSERT_EQ(vk_router_add(&r_, &svc), VK_OK);
  EXPECT_EQ(vk_router_add(&r_, &again), VK_EINVAL);
  EXPECT_EQ(vk_router_add(&r_, &svc), VK_EINVAL);
  // The first registration still routes.
  ASSERT_NE(Find(&r_, "/p.S/A"), nullptr);
  EXPECT_EQ(Find(&r_, "/p.S/A")->service, &svc);
}

TEST_F(RouterTest, DuplicateMethodRefused) {
  const vk_method_t methods[] = {Method("A"), Method("A")};
  vk_service_t svc = Service("p.Dup", methods, 2);
  EXPECT_EQ(vk_router_add(&r_, &svc), VK_EINVAL);
}

// A service refused for a duplicate method leaves nothing behind.
TEST_F(RouterTest, RefusedServiceLeavesNoRoutes) {
  const vk_method_t methods[] = {Method("A"), Method("A")};
  vk_service_t svc = Service("p.Dup", methods, 2);
  ASSERT_EQ(vk_router_add(&r_, &svc), VK_EINVAL);
  EXPECT_EQ(Find(&r_, "/p.Dup/A"), nullptr);
  EXPECT_EQ(r_.n_routes, 0u);
}

TEST_F(RouterTest, BadServicesRefused) {
  const vk_method_t methods[] = {Method("A")};
  vk_service_t no_name = Service("", methods, 1);
  EXPECT_EQ(vk_router_add(&r_, &no_name), VK_EINVAL);
  vk_service_t null_name = Service(nullptr, methods, 1);
  EXPECT_EQ(vk_router_add(&r_, &null_name), VK_EINVAL);
  vk_service_t no_methods = Service("p.Empty", methods, 0);
  EXPECT_EQ(vk_router_add(&r_, &no_methods), VK_EINVAL);
  vk_method_t no_start = Method("A");
  no_start.on_start = nullptr;
  vk_service_t bad_method = Service("p.NoStart", &no_start, 1);
  EXPECT_EQ(vk_router_add(&r_, &bad_method), VK_EINVAL);
  vk_method_t empty_name = Method("");
  vk_service_t bad_name = Service("p.EmptyName", &empty_name, 1);
  EXPECT_EQ(vk_router_add(&r_, &bad_name), VK_EINVAL);
}

TEST_F(RouterTest, HasServiceTellsUnknownServiceFromUnknownMethod) {
  const vk_method_t methods[] = {Method("Check")};
  vk_service_t svc = Service("grpc.health.v1.Health", methods, 1);
  ASSERT_EQ(vk_router_add(&r_, &svc), VK_OK);

  // Unknown method of a known service.
  EXPECT_EQ(Find(&r_, "/grpc.health.v1.Health/Nope"), nullptr);
  EXPECT_TRUE(HasService(&r_, "/grpc.health.v1.Health/Nope"));
  EXPECT_TRUE(HasService(&r_, "/grpc.health.v1.Health/"));
  EXPECT_TRUE(HasService(&r_, "/grpc.health.v1.Health"));
  // Unknown service.
  EXPECT_FALSE(HasService(&r_, "/grpc.health.v1.Healt/Check"));
  EXPECT_FALSE(HasService(&r_, "/grpc.health.v1.HealthX/Check"));
  EXPECT_FALSE(HasService(&r_, "/grpc.health.v1/Health/Check"));
  EXPECT_FALSE(HasService(&r_, "grpc.health.v1.Health/Check"));
  EXPECT_FALSE(HasService(&r_, "/"));
  EXPECT_FALSE(HasService(&r_, ""));
  EXPECT_FALSE(HasService(&r_, "//Check"));
}

TEST_F(RouterTest, HundredServices) {
  // Enough routes to force the table to grow several times.
  std::vector<std::string> names;
  std::vector<std::vector<vk_method_t>> methods(100);
  std::vector<std::string> method_names = {"Get", "Put", "Del"};
  for (int i = 0; i < 100; i++) {
    names.push_back("pkg.v" + std::to_string(i) + ".Service" +
                    std::to_string(i * 7));
  }
  std::vector<vk_service_t> svcs(100);
  for (int i = 0; i < 100; i++) {
    for (const std::string &m : method_names) {
      methods[i].push_back(Method(m.c_str()));
    }
    svcs[i] = Service(names[i].c_str(), methods[i].data(), methods[i].size());
    ASSERT_EQ(vk_router_add(&r_, &svcs[i]), VK_OK) << i;
  }
  EXPECT_EQ(r_.n_routes, 300u);
  EXPECT_EQ(r_.n_services, 100u);
  for (int i = 0; i < 100; i++) {
    for (size_t j = 0; j < method_names.size(); j++) {
      std::string path = "/" + names[i] + "/" + method_names[j];
      const vk_route_t *route = Find(&r_, path);
      ASSERT_NE(route, nullptr) << path;
      EXPECT_EQ(route->service, &svcs[i]);
      EXPECT_EQ(route->method, &methods[i][j]);
    }
    EXPECT_EQ(Find(&r_, "/" + names[i] + "/Nope"), nullptr);
    EXPECT_TRUE(HasService(&r_, "/" + names[i] + "/Nope"));
  }
  EXPECT_FALSE(HasService(&r_, "/pkg.v100.Service700/Get"));
  // The load factor stays at most one half.
  EXPECT_GE(r_.n_slots, 2 * r_.n_routes);
}

TEST(RouterLifecycle, CleanupThenReuse) {
  vk_router_t r;
  vk_router_init(&r);
  vk_router_cleanup(&r);  // cleanup of an empty router
  const vk_method_t methods[] = {Method("A")};
  vk_service_t svc = Service("p.S", methods, 1);
  vk_router_init(&r);
  ASSERT_EQ(vk_router_add(&r, &svc), VK_OK);
  vk_router_cleanup(&r);
  EXPECT_EQ(r.n_routes, 0u);
  EXPECT_EQ(vk_router_find(&r, "/p.S/A", 6), nullptr);
  vk_router_init(&r);
  ASSERT_EQ(vk_router_add(&r, &svc), VK_OK);  // no longer a duplicate
  vk_router_cleanup(&r);
}

}  // namespace
